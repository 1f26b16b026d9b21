"""The Lo-Hp policy: backbones, the Gaussian policy and its loss, the objective, fitting it,
and the policy directory."""

"""One module per command: collect (with its run execution), train, generate, evaluate (and
evaluate for learned optimizers), export, predict."""

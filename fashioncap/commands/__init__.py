"""The `fashioncap` subcommands: each module parses its arguments (`add_arguments`) and runs (`run`).

Commands import the library inside `run`, so `fashioncap COMMAND --help` answers without loading torch.
The library (everything outside this package) never imports a command.
"""

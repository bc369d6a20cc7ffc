"""Layer 5, the command line: one module per ``python -m ppr <command>`` (``ppr.__main__``
imports only the chosen one), each ``add_arguments(parser)`` and ``run(args) -> int``: argument
parsing and printing only. ``orphan`` is no command: the entry point's watch that ends a child of
the Lib with its parent.
"""

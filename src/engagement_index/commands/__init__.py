"""Sub-commands of the ``engagement-index`` command line, one module each."""

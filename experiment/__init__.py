"""Experiments: does a change to the data change the model? Arms built, trained, exported and gated alike, then
compared case by case against the untrained base and a control arm (``forma experiment``), and what differs between
two dataset builds (``forma diff``).

The layer sits above eval (it runs the gate) and below the command line (which only parses options and prints).
"""

"""The SimCLR paper's findings as commands: `python -m simclr.experiments NAME --out DIR`.

grid.py runs a grid of pre-training runs and evaluates each alike, resumably; studies.py says
which runs each experiment holds and draws its table and figures; __main__.py is the program.
"""

"""What a training run is made of, whatever it trains (pre-training, fine-tuning):

    loop.py         the one training loop: epochs of steps, metrics, evaluations, checkpoints
    runfolder.py    the --out folder that one process writes, and what it keeps there
    checkpoint.py   checkpoint.npz: whole, finite, readable only as data
    report.py       the progress line and metrics.jsonl
    interrupts.py   Ctrl-C and SIGTERM: finish the step, save, stop
    distributed.py  the ranks of a data-parallel run: how they start, agree and fail together
    process.py      how a program that trains sets up its process
"""

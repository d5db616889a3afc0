"""watchdog: the campaign server that runs outside the beam room.

Campaign file, DUT control over SSH, liveness, software and hardware watchdogs, power-switch drivers,
serial consoles and the journal. It never imports torch.

Not the filesystem-events library published on PyPI under the same name: install diehardlab into its
own virtual environment (see README).
"""

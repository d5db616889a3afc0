"""watchdog: the campaign server that runs outside the beam room.

Campaign file, DUT control over SSH, liveness, software and hardware watchdogs, power-switch drivers,
serial consoles and the journal. It never imports torch.
Installed as ``diehardlab.watchdog``: the filesystem-events library that PyPI publishes as ``watchdog`` can be
installed beside it.
"""

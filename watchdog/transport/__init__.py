"""How the server controls a DUT: over SSH (:mod:`diehardlab.watchdog.transport.ssh`) or as local processes
(:mod:`diehardlab.watchdog.transport.local`, for the demo and the tests). Both offer the same coroutines:
``start``, ``is_running``, ``stop``, ``reboot``, ``reachable``, ``wait_up``, ``pull_logs``, ``close``,
and the notifications ``power_lost`` / ``power_restored`` that the hardware watchdog sends.
"""

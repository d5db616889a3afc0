"""The live beam-line dashboard: a read-only web page served from the campaign server's event loop.

``diehard serve FILE --dashboard ADDR`` serves it from the running server (live: every datagram, every state
change); ``diehard dashboard FILE`` serves it from the files a server writes (its journal, its status file,
the logs and the facility log), for a server started without it or a campaign that has ended.

Per DUT: state, escalation step, age of the last datagram, iterations per second, SDC and DUE counts and the
watchdog's actions from the journal. Per configuration (the analysis' groups): fluence, events, cross section
with its Garwood interval and the beam time still needed to reach ``[dashboard] target_relative_width``,
computed by the analysis itself in a worker process (:mod:`diehardlab.analysis.live`).

Modules: ``state`` (what the page shows of each DUT, the journal follower), ``groups`` (the analysis worker
and the facility-log watch), ``hub`` (server-sent events with bounded queues), ``web`` (aiohttp routes and
the security checks), ``service`` (what starts and stops them). Importing this package imports nothing
heavy; aiohttp is imported when a dashboard starts.
"""

"""hardening: build and assess hardened models.

Models, fault models, fault-aware training, application-level fault injection and workload selection.
Importing this package imports nothing heavy; torch is imported by the modules that need it.
"""

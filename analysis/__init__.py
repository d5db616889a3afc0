"""analysis: logs, facility flux, cross sections, FIT, PVF, confidence intervals, tables and reports.

It never imports torch.
"""

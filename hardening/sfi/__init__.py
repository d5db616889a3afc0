"""Statistical fault injection (SFI): sample sizes, fault lists, a fast exact injection engine and its results.

Modules: ``bits`` (number formats and their bit faults), ``targets`` (the stored tensors a fault hits, per
format: float parameters, int8 codes and scales), ``plan`` (populations and sample sizes per network, layer and bit),
``faultlist`` (the SFIadvancedmodels-compatible fault list), ``graph`` (the cached-activation executor),
``engine`` (the injection campaign), ``results`` (tables and achieved margins), ``curve`` (fault detection
curves), ``sources`` (models and images), ``cli`` (``diehard sfi``).
"""

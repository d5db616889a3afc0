"""Statistical fault injection (SFI): sample sizes, fault lists, a fast exact injection engine and its results.

Modules: ``bits`` (float32 bit operations), ``plan`` (populations and sample sizes per network, layer and bit),
``faultlist`` (the SFIadvancedmodels-compatible fault list), ``graph`` (the cached-activation executor),
``engine`` (the injection campaign), ``results`` (tables and achieved margins), ``curve`` (fault detection
curves), ``sources`` (models and images), ``cli`` (``diehard sfi``).
"""

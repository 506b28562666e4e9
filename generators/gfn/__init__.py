"""Crystal-GFN: a GFlowNet over space group -> composition -> lattice, with proxies and rewards.

See ``generators/gfn/README.md``. Entry points: :class:`generators.gfn.gfn.GFNSampler`,
:class:`generators.gfn.env.CrystalEnv`, :class:`generators.gfn.proxy.Proxy`.
"""

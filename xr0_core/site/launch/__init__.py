"""A site's local round on several data-parallel processes (node config ``gpus = W``; D16).

:mod:`~xr0_core.site.launch.parallel` (the launching process: checks, the round's folder, torchrun) and
:mod:`~xr0_core.site.launch.rank` (what each rank runs: ``python -m xr0_core.site.launch.rank FOLDER``).
"""

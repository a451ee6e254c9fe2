"""Where a container request becomes an OCI edit: the runtime shim, the OCI hook, and the pure spec
edits they share.

Owns: reading the engine's argv (argv.py), a config.json's request and its sliced version
(prepare.py), the spec edits (spec.py, injection.py, mps.py, cdi.py), flexai-runtime
(runtime.py), flexai-hook (hook.py, hookinject.py), and the small bundles and images the demo
and tests build (bundle.py, image.py).

May import: the top-level request model and client, and devices/. Never daemon/: flexaid may
call the spec edits (the C front door's prepare), not the other way round.
"""

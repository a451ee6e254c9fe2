"""flexai as a kube-scheduler extender (docs/kubernetes.md, "Scheduler extender"): for a pod
whose ResourceClaims ask gpu.flexai.io for part of a card, `filter` keeps the node flexai's
placement (placement.choose_node) picks and `prioritize` ranks the others, so an unmodified
kube-scheduler packs cards as flexai would instead of spreading by CPU.

view.py: ResourceSlices + allocated claims → the cluster's cards (pure); pod.py: a pod's
claims → what it asks (pure); protocol.py: the extender/v1 JSON (pure); decide.py: filter and
prioritize over a view (pure); cache.py: the view kept by relisting the API server;
server.py: the HTTP server and `flexai extender` in the foreground.

May import: the top level, placement/, and dra/'s pure parts (claim.py, slices.py) and its
API server client (apiserver.py); nothing imports it but cli/.
"""

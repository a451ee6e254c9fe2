"""flexai as a Kubernetes DRA driver (gpu.flexai.io): the kubelet plugin that turns an allocated
ResourceClaim into a flexaid slice and a CDI spec (docs/kubernetes.md).

claim.py: the claim's allocation → shares (pure); cdi.py: a reservation → CDI spec (pure);
apiserver.py: the API server's verbs; slices.py: the node's ResourceSlice (pure); publish.py:
keeping it published; driver.py: prepare/unprepare against flexaid and the CDI folder;
protos.py + proto/: the kubelet's gRPC APIs; plugin.py: the gRPC servers; agent.py: `flexai dra`.
"""

"""flexai's admission webhook for Kubernetes (`flexai admission`): completes ResourceClaims that
name one of a card's capacities with the other in the same share (defaults.py), over the
AdmissionReview protocol (review.py) served by server.py.

Imports: the top-level modules and dra/'s pure parts and API server client (claim, slices,
apiserver); only cli/ imports this package."""

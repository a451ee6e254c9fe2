"""Where a card is found, and what the host keeps per card and per slice.

Owns: the card record (card.py), discovery (inventory.py: simulated cards and NVML;
ascend.py and ascend_nodes.py: Ascend), the simulated cards' description (simcards.py), the
built library's paths (library.py), the Python view of a slice's region (region.py) and the
card boards (board.py).

May import: the top-level request model only.
"""

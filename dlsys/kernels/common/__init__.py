"""What every kernel family shares: compute helpers (``compute``), fused epilogues
(``epilogue``) and schedule helpers (``loops``)."""

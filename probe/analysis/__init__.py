"""Statistics: generic tests and intervals over per-seed values (``inference``), and placements compared
over tidy tables (``compare``)."""

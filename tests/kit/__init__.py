"""Test infrastructure shared by the suite, bench/ and examples/ (never shipped in the wheel)."""

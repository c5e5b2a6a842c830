"""Every document kiln reads or writes, as frozen dataclasses, with parsing and validation.

Imports: stdlib, PyYAML, tomli only. No printing, no exiting, no I/O beyond paths or bytes handed in.
"""

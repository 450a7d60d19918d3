"""Security shared by agents and console-side services: who may do what (``policy``),
what was decided (``audit``), who sent it (``signing``) and whether it was seen before
(``replay``). Import the modules directly: this package imports none of them, so a
component that checks no signatures never loads the cryptography library."""

"""Selection on validation: which setting of a grid a (method, task) is reported at. Used by the
sweep (its final stage runs only the chosen setting) and by the report (its cells)."""

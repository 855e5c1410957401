"""Reports: table.py (the model), build.py (result.json files -> table), render.py (md/csv/tex and
the console), plot.py (score against stored fraction), reference.py (published rows), main.py
(`peftx report`)."""

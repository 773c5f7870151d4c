"""Reports from results: `report` (figures and tables of runs), `compare` (runs side by side), `plots` (the
figures), `figstyle` (the drawing kit), `pages` (HTML and Markdown pages).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.results`, `kvbench.estimate`. Never the
measuring side, plan or cli: a report is drawn from records alone.
"""

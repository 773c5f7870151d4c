"""Reports from results: `report` (figures and tables of runs), `compare` (runs side by side), `summary` (the table
`kvbench run` prints), `plots` (the figures; `memplots` the figures of bytes, `figrows` what they share about rows),
`figstyle` (the drawing kit), `ticks` (labels that neither overlap nor hide), `pages` (HTML and Markdown pages).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.results`, `kvbench.estimate`. Never the
measuring side, plan or cli: a report is drawn from records alone.
"""

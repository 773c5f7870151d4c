"""The measuring side: a model on a device (`models`), the instruments (`clock`, `forwards`, `memory`, `nvml`,
`cache_bytes`), the environment block (`environment`), one scenario measured into one record (`measure`), and a
sweep that appends each record as it finishes (`runner`).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.estimate` (estimates beside each
measurement), `kvbench.results` (the record schema and the run-folder store). Never report, plan or cli.
"""

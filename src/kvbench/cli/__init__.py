"""The command line, one module per command group: `run`, `presets`, `report` (report and compare), `plan` (plan
and frontier); `common` holds what they share (the console, the parser's error type); `app` registers every command
and holds `main`, the `kvbench` entry point.

May import every layer below it. Command modules import `common`, never each other or `app`.
"""

"""The harness around `measuring.measure`: `runner` (a sweep, each record appended as it finishes), `interleave`
(repeats taking turns), `rounds` (the pytest plugin's timed rounds), `resume` (resuming and interrupting a sweep) and
`eta` (how long it will take)."""

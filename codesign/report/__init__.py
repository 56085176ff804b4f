"""Design-space exploration reports: a tuning run (or one design) -> report.html, report.md, CSVs.

run_data      RUN/ (database, settings, space)        -> RunData
design_sim    RUN/front/ (the tune's per-layer simulations of its best designs; an older run's
              designs simulated again), or one design  -> per-layer SimulationReport;
              RUN/front/sequential.json                -> each best design beside its sequential
                                                          counterpart (Counterpart)
figures       RunData / simulated designs              -> plotly figures
tables        RunData / simulated designs              -> rows for HTML, Markdown and CSV
html, markdown  figures + tables                       -> one self-contained page, a summary
build         the stages above                         -> files written atomically in RUN/
"""

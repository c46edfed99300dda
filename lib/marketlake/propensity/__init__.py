"""Purchase propensity: point-in-time sets (`dataset`), candidate models and calibration (`models`), and
their metrics (`evaluation`). The job is marketlake.jobs.propensity."""

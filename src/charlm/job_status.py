"""``job_status.yaml``: the record every ``charlm-train`` run leaves in its run dir of how it ended.

Written by :func:`charlm.sweeps.write_job_status` (for ``charlm-train``, a sweep's
:class:`~charlm.sweeps.JobReport` and the apps' clean error exits), read by ``charlm-report``
(:func:`charlm.evaluation.report.read_job`). Its fields: ``status`` (``COMPLETED``,
``STOPPED``, ``INTERRUPTED``, ``FAILED``), ``overrides``, ``value``, ``step``, ``reason``,
``error``, ``resumes``, as :func:`~charlm.sweeps.write_job_status` describes them.
"""

#: The record's file name, in the run dir.
JOB_STATUS_FILE = "job_status.yaml"

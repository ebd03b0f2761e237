"""A stand-in for python-weka-wrapper3 (the ``weka`` package), for the tests only.

It answers the calls the Weka spectrum templates' script makes (``handlers/_weka_bare.py``) the
way pww3 does, with a nearest-centroid classifier in place of Weka's: ``jvm.start``/``stop``,
numeric and nominal attributes, instances with missing values, ``Classifier(classname,
options)`` that refuses a class name outside ``weka.classifiers.``, ``serialize(path, header)``,
and the ``AddClassification`` filter reading that file (``-serialized``) and refusing it when
missing, as Weka does. Put its folder first on ``PYTHONPATH`` (tests/handlers/test_weka.py).
"""

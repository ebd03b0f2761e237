"""weka.core: the JVM and the datasets (stand-in)."""

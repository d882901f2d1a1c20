"""CoLoR-Filter study: scoring on the framework, the study runner and its report."""

"""Sources stage: read every export into typed canonical staging tables."""

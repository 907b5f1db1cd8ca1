"""Test support shared by the test suite and benchmarks: loopback fakes and a sensor driver."""

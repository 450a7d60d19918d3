"""hostbus benchmarks (`hostbus bench`): hostbus measured against the raw client
libraries, both in the same run on the same broker. See benchmarks/README.md."""

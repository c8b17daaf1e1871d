"""The programs: console scripts, the demo and the benchmark, built on the library floors
(``models`` < ``endstation`` < ``xas_callbacks`` < ``plans``) and imported by nothing below them."""

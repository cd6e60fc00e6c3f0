# Writes the README's walkthrough (the ```c block after the marker line
# "<!-- walkthrough -->") to OUT, so the README's code is what the test runs.
file(READ ${README} text)
string(FIND "${text}" "<!-- walkthrough -->" marker)
if(marker EQUAL -1)
  message(FATAL_ERROR "README.md has no <!-- walkthrough --> marker")
endif()
string(SUBSTRING "${text}" ${marker} -1 rest)
string(FIND "${rest}" "```c\n" start)
string(SUBSTRING "${rest}" ${start} -1 rest)
string(SUBSTRING "${rest}" 5 -1 rest)
string(FIND "${rest}" "```" stop)
string(SUBSTRING "${rest}" 0 ${stop} code)
file(WRITE ${OUT} "${code}")

# Compiles SOURCE and succeeds only if compilation fails with EXPECT in the diagnostics.
execute_process(
  COMMAND ${COMPILER} -std=c++20 -fsyntax-only -I${INCLUDE} ${SOURCE}
  RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must be rejected")
endif()
string(FIND "${err}" "${EXPECT}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "diagnostics do not name ${EXPECT}:\n${err}")
endif()
string(FIND "${err}" "map_wrong_type.cc:7" site)
if(site EQUAL -1)
  message(FATAL_ERROR "diagnostics do not point at the call site:\n${err}")
endif()
message(STATUS "rejected as expected, naming ${EXPECT}")

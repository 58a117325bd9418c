# librdkafka for the Kafka connector and its tests, as the target dataflow_rdkafka.
#
# By default a static librdkafka 2.12.1, built from source by scripts/librdkafka.sh into
# DATAFLOW_RDKAFKA_PREFIX at the first configure (about two minutes on two cores; later configures
# find it there): Debian bookworm's 2.0.2 cannot log in with SASL/SCRAM to Kafka 4 (librdkafka
# #4895). DATAFLOW_SYSTEM_RDKAFKA=ON links the system's librdkafka (pkg-config rdkafka) instead.
option(DATAFLOW_SYSTEM_RDKAFKA "Link the system's librdkafka instead of building 2.12.1 (SCRAM needs >= 2.6.1)" OFF)
set(DATAFLOW_RDKAFKA_PREFIX "${PROJECT_SOURCE_DIR}/build/deps/librdkafka" CACHE PATH
    "Where scripts/librdkafka.sh installs the bundled librdkafka")

add_library(dataflow_rdkafka INTERFACE IMPORTED GLOBAL)
if(DATAFLOW_SYSTEM_RDKAFKA)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(RDKAFKA REQUIRED IMPORTED_TARGET GLOBAL rdkafka)
  if(RDKAFKA_VERSION VERSION_LESS 2.6.1)
    message(WARNING "librdkafka ${RDKAFKA_VERSION} is older than 2.6.1: Kafka 4 refuses its SASL/SCRAM logins")
  endif()
  set_target_properties(dataflow_rdkafka PROPERTIES INTERFACE_LINK_LIBRARIES PkgConfig::RDKAFKA)
else()
  execute_process(COMMAND "${PROJECT_SOURCE_DIR}/scripts/librdkafka.sh" "${DATAFLOW_RDKAFKA_PREFIX}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "building librdkafka failed (scripts/librdkafka.sh, output above); "
                        "-DDATAFLOW_SYSTEM_RDKAFKA=ON links the system's instead")
  endif()
  find_package(OpenSSL REQUIRED)
  find_package(ZLIB REQUIRED)
  find_package(Threads REQUIRED)
  # The static library first, then what it needs, in link order.
  set_target_properties(dataflow_rdkafka PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${DATAFLOW_RDKAFKA_PREFIX}/include"
    INTERFACE_COMPILE_DEFINITIONS LIBRDKAFKA_STATICLIB
    INTERFACE_LINK_LIBRARIES "${DATAFLOW_RDKAFKA_PREFIX}/lib/librdkafka.a;OpenSSL::SSL;OpenSSL::Crypto;sasl2;zstd;lz4;ZLIB::ZLIB;Threads::Threads;${CMAKE_DL_LIBS};m;rt")
endif()

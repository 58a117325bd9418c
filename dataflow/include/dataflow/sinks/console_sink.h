// Prints each batch (Spark's console sink): a header with the batch id, then the first rows.
#pragma once

#include <iostream>
#include <ostream>
#include <string>

#include "dataflow/sink.h"

namespace dataflow {

struct ConsoleSinkOptions {
  // Rows printed per batch. Default: 20.
  size_t numRows = 20;
};

template <class T>
class ConsoleSink final : public Sink<T> {
 public:
  explicit ConsoleSink(ConsoleSinkOptions options = {}, std::ostream& out = std::cout)
      : options_(options), out_(out) {}

  std::string description() const override { return "ConsoleSink"; }

  void addBatch(const Batch<T>& batch, const BatchInfo& info) override {
    out_ << "-------------------------------------------\n"
         << "Batch: " << info.batchId << "\n"
         << "-------------------------------------------\n";
    size_t printed = 0;
    for (const T& row : batch.rows()) {
      if (printed == options_.numRows) break;
      if constexpr (requires(std::ostream& os, const T& r) { os << r; }) {
        out_ << row << "\n";
      } else {
        out_ << "<row>\n";
      }
      ++printed;
    }
    if (batch.numRows() > printed) out_ << "only showing top " << printed << " rows\n";
    for (const auto& d : batch.deadLetters()) {
      out_ << "dead letter " << d.topic << "-" << d.partition << "@" << d.offset << " " << d.errorKind
           << ": " << d.errorMessage << "\n";
    }
    out_ << std::flush;
  }

 private:
  ConsoleSinkOptions options_;
  std::ostream& out_;
};

}  // namespace dataflow

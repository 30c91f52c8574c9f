// eval::write_report: the report of an evaluation (report.html, report.md,
// metrics.json and PNG plots drawn with OpenCV) and its summary table.
#pragma once

#include <string>

#include "parry/eval/evaluation.hpp"

namespace parry::eval {

/// Writes report.html, report.md, metrics.json, accuracy_vs_epsilon.png,
/// roc.png, examples.png and latency.png into `directory` (created if needed;
/// every file written atomically). @throws parry::IoError.
void write_report(const Evaluation& evaluation, const std::string& directory);

/// The Markdown summary table (also printed by the CLI).
std::string summary_table(const Evaluation& evaluation);

}  // namespace parry::eval

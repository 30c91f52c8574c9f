// eval::write_report: the report of an evaluation (report.html, report.md,
// metrics.json and PNG plots drawn with OpenCV), its summary table and its
// black-box tables.
#pragma once

#include <string>

#include "parry/eval/evaluation.hpp"

namespace parry::eval {

/// Writes report.html, report.md, metrics.json, accuracy_vs_epsilon.png,
/// roc.png, examples.png, latency.png (and certified_accuracy.png when the
/// evaluation certified) into `directory` (created if needed;
/// every file written atomically). @throws parry::IoError.
void write_report(const Evaluation& evaluation, const std::string& directory);

/// The Markdown summary table (also printed by the CLI).
std::string summary_table(const Evaluation& evaluation);

/// The certified rows as Markdown: a sentence on what they measure, then one
/// row per σ (abstention rate; certified / attacked accuracy at each radius,
/// each with its 95% interval; CERTIFY's cost against plain forward passes).
/// Empty when the evaluation certified nothing.
std::string certified_tables(const Evaluation& evaluation);

/// The black-box rows as Markdown: a sentence on what they measure, then one
/// table per defense (attack, budget, success with its 95% interval and n,
/// median queries, median L2, runs stopped and flagged by the defense).
/// Empty when the evaluation ran none (black_box.images = 0).
std::string black_box_tables(const Evaluation& evaluation);

}  // namespace parry::eval

//! What the shared spine costs per call: classifying an outcome and looking up a policy.
//! Every layer does both on every request.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::classify::{
    Category, Classify, ClassifyExt, CodeTable, HttpStatus, Severity, Transience, TransportErrors,
};
use palisade::policy::Policies;

const POLICIES: &str = include_str!("../examples/ledger/policies.yaml");

fn classify(c: &mut Criterion) {
    let classifier = HttpStatus::new().or(TransportErrors);
    let ok = http::Response::builder().status(200).body(()).unwrap();
    let unavailable = http::Response::builder()
        .status(503)
        .header("retry-after", "3")
        .body(())
        .unwrap();
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);

    c.bench_function("classify/http_200", |b| {
        b.iter(|| classifier.outcome(black_box(Ok::<_, &std::io::Error>(&ok))))
    });
    c.bench_function("classify/http_503_retry_after", |b| {
        b.iter(|| classifier.outcome(black_box(Ok::<_, &std::io::Error>(&unavailable))))
    });
    c.bench_function("classify/io_connection_refused", |b| {
        b.iter(|| classifier.outcome(black_box(Err::<&http::Response<()>, _>(&refused))))
    });

    let mut table = CodeTable::new("binance");
    for code in -2020..-1000 {
        table.insert(
            &code.to_string(),
            Transience::Transient,
            Category::External,
            Severity::Medium,
        );
    }
    c.bench_function("classify/code_table_hit", |b| {
        b.iter(|| table.classify(black_box("-1003")))
    });
}

fn policies(c: &mut Criterion) {
    let policies = Policies::from_yaml_str(POLICIES).unwrap();
    c.bench_function("policy/for_operation", |b| {
        b.iter(|| {
            policies
                .for_operation(black_box("payment_gateway"))
                .timeout
                .total
        })
    });
    c.bench_function("policy/for_route", |b| {
        b.iter(|| {
            policies
                .for_route(black_box("POST"), black_box("/v1/transfers"))
                .retry
                .max_retries
        })
    });
    c.bench_function("policy/load_ledger_file", |b| {
        b.iter(|| Policies::from_yaml_str(black_box(POLICIES)).unwrap())
    });
}

criterion_group!(benches, classify, policies);
criterion_main!(benches);

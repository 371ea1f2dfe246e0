//! Relevance on the demo data with the real MiniLM model: queries whose right answers are known
//! from the captions must find them in the top 10.

mod support;

use serde_json::json;
use support::{demo_index, search, Server};

#[test]
fn queries_find_their_subject_in_the_top_10() {
    let server = Server::start(&demo_index());
    // (query, words any of which marks a right answer, right answers required in the top 10)
    let cases: [(&str, &[&str], usize); 6] = [
        ("a horse", &["horse", "cavallo"], 5),
        ("a penguin", &["penguin", "tux"], 5),
        ("an electric guitar", &["guitar"], 3),
        ("a butterfly", &["butterfly", "farfalla"], 3),
        ("riding a bike", &["bicycle", "bike"], 2),
        ("a red apple", &["apple"], 3),
    ];
    let mut report = Vec::new();
    for (query, words, required) in cases {
        let response = search(server.port, &json!({"text": query, "k": 10}));
        assert_eq!(response.status, 200, "{query}");
        let body = response.json();
        let captions: Vec<String> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|result| result["caption"].as_str().unwrap().to_lowercase())
            .collect();
        let hits = captions
            .iter()
            .filter(|caption| words.iter().any(|word| caption.contains(word)))
            .count();
        report.push(format!("{query:?}: {hits}/10 {captions:?}"));
        assert!(
            hits >= required,
            "{query:?} found {hits} right answers in the top 10, want {required}: {captions:#?}"
        );
    }
    println!("{}", report.join("\n"));
}

"""The watch service's pure parts: the typed sources of SAEs and what they find (`sources`), and the plan of a watch
run: which found SAEs are new, how they group by model, how they rank among everything evaluated (`plan`)."""
